"""The cache's policy, replayed on counts instead of files: what a sequence of trials will hit,
miss and store under a size limit, before any of them runs (`tuner plan`).

It follows `FeatureCache`: a trial holds its feature sets open; a set stores what it misses
while there is room; room is made by evicting the least recently used sets not in use; once a
set finds no room it stores nothing more in that trial. Entries are counted per *group*
(one augmented view of the training set, or the validation windows): a trial that reads a
group hits as many of its entries as are stored, whichever they are.

    >>> read = lambda group: Read("train", group, count=10, entry_bytes=100)
    >>> trial = [read(0), read(1)]  # two epochs, a fresh view each
    >>> outcomes, held = simulate([trial, trial], limit=1500)  # room for 15 of 20 entries
    >>> [t.hits for t in outcomes], held
    ([0, 15], 1500)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Read:
    """One pass of a trial over one group of one feature set (one epoch's views, or the
    validation windows of one evaluation)."""

    set_key: str
    group: object
    count: int
    entry_bytes: int


@dataclass
class TrialOutcome:
    hits: int = 0
    misses: int = 0
    misses_by_set: dict[str, int] | None = None

    @property
    def reads(self) -> int:
        return self.hits + self.misses


def simulate(trials: list[list[Read]], limit: int) -> tuple[list[TrialOutcome], int]:
    """Each trial's hits and misses, run one after another on an empty cache,
    and the bytes the cache holds at the end."""
    stored: dict[tuple[str, object], int] = {}  # (set, group) -> entries stored
    set_bytes: dict[str, int] = {}
    last_used: dict[str, int] = {}
    outcomes = []
    for clock, reads in enumerate(trials):
        in_use = {read.set_key for read in reads}
        for key in in_use:
            last_used[key] = clock
            set_bytes.setdefault(key, 0)
        full: set[str] = set()
        outcome = TrialOutcome(misses_by_set={})
        for read in reads:
            have = min(stored.get((read.set_key, read.group), 0), read.count)
            missing = read.count - have
            outcome.hits += have
            outcome.misses += missing
            outcome.misses_by_set[read.set_key] = (
                outcome.misses_by_set.get(read.set_key, 0) + missing
            )
            if read.set_key in full or not missing:
                continue
            need = missing * read.entry_bytes
            room = _make_room(stored, set_bytes, last_used, in_use, limit, need)
            fits = min(missing, room // read.entry_bytes)
            if fits < missing:
                full.add(read.set_key)
            stored[(read.set_key, read.group)] = have + fits
            set_bytes[read.set_key] += fits * read.entry_bytes
        outcomes.append(outcome)
    return outcomes, sum(set_bytes.values())


def _make_room(stored, set_bytes, last_used, in_use, limit: int, need: int) -> int:
    """Evict least recently used sets not in use until `need` fits; the bytes now free."""
    used = sum(set_bytes.values())
    for key in sorted(set_bytes, key=lambda k: last_used[k]):
        if used + need <= limit:
            break
        if key not in in_use and set_bytes[key]:
            used -= set_bytes.pop(key)
            last_used.pop(key)
            for entry in [e for e in stored if e[0] == key]:
                del stored[entry]
    return max(0, limit - used)
