"""Using a trained model: segment image files, evaluate on a split, write official-format PNGs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tuner.core.checkpoint import load_segmenter
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.labels import decode_target, train_ids_to_label_ids
from tuner.core.data.readers import read_image
from tuner.core.data.transforms import image_tensor, normalize
from tuner.core.environment import placement, resolve_device
from tuner.core.errors import UserError
from tuner.core.inference import evaluate, predict_logits
from tuner.core.model.adapters import merge_adapters
from tuner.core.visualize import OVERLAY_PALETTE, colour_key, overlay
from tuner.deploy.quantize import load_quantized


@dataclass
class Predictor:
    model: torch.nn.Module
    crop: tuple[int, int]
    device: torch.device

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) uint8 train ids."""
        batch = normalize(image_tensor(image)).unsqueeze(0).to(*placement(self.model))
        return predict_logits(self.model, batch, self.crop).argmax(1)[0].byte().cpu().numpy()


def load_predictor(
    checkpoint: Path | None, model_dir: Path | None = None, device: str = "auto"
) -> Predictor:
    if (checkpoint is None) == (model_dir is None):
        raise UserError("give either --checkpoint (FP32) or --model (a quantized model folder)")
    if model_dir is not None:
        model, config = load_quantized(model_dir)
        return Predictor(model, config.image_size, torch.device("cpu"))
    dev = resolve_device(device)
    model, ckpt = load_segmenter(checkpoint, dev)
    return Predictor(merge_adapters(model), ckpt.config.image_size, dev)


def predict_files(predictor: Predictor, images: list[Path], out_dir: Path) -> Iterator[Path]:
    """For each image: <stem>_color.png (the official Cityscapes palette), <stem>_overlay.png
    (the same but for the vehicles, whose official blues are told apart here:
    `OVERLAY_PALETTE`) and <stem>_key.png, the colour key of the classes present in both."""
    for path in images:
        image = read_image(Path(path), mode="RGB")
        train_ids = predictor(image)
        out_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to write
        stem = Path(path).stem
        color_path = out_dir / f"{stem}_color.png"
        overlay_path = out_dir / f"{stem}_overlay.png"
        key_path = out_dir / f"{stem}_key.png"
        Image.fromarray(decode_target(train_ids)).save(color_path)
        Image.fromarray(overlay(image, train_ids, palette=OVERLAY_PALETTE)).save(overlay_path)
        key, text = colour_key(train_ids)
        key.save(key_path, pnginfo=text)
        yield color_path
        yield overlay_path
        yield key_path


def label_id_writer(dataset: CityscapesDataset, out_dir: Path):
    """An `on_prediction` hook writing <city_seq_frame>_pred_labelIds.png as uint8 label ids,
    the form `csEvalPixelLevelSemanticLabeling` and the benchmark server read."""

    def write(index: int, train_ids: torch.Tensor) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        label_ids = train_ids_to_label_ids(train_ids.numpy().astype(np.uint8))
        name = f"{dataset.samples[index].stem}_pred_labelIds.png"
        Image.fromarray(label_ids).save(out_dir / name)

    return write


def evaluate_checkpoint(
    checkpoint: Path, data_root: Path, split: str, out_dir: Path | None, device: str = "auto"
) -> dict:
    dev = resolve_device(device)
    model, ckpt = load_segmenter(checkpoint, dev)
    dataset = CityscapesDataset(data_root, split)
    hook = label_id_writer(dataset, out_dir) if out_dir else None
    return evaluate(
        model, dataset, ckpt.config.image_size, dev, ckpt.config.boundary_tolerance, hook
    )
