"""Deployment: INT8 models for CPUs (`quantize`) and using a model on images (`predict`)."""
