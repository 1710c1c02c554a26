"""What an extraction reports after every batch, and the tqdm bar the CLI shows it with.

:func:`actstore.extract.extract` calls its ``progress`` callback with an
:class:`ExtractProgress` after every batch; :class:`ProgressBar` is such a callback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ExtractProgress", "ProgressBar"]


@dataclass(frozen=True)
class ExtractProgress:
    """Where one extraction job stands, reported after every batch.

    Records are counted in corpus order; inside a pool (whose batches are sorted by
    length) the records of the pool are counted in proportion to its tokens run so far,
    so ``records`` moves with every batch and may be fractional.
    """

    records: float
    """Source records done (including those done by earlier jobs of this part)."""
    total_records: int | None
    """Records the job reads in all (None when the corpus cannot be counted cheaply)."""
    tokens: int
    """Tokens fed to the model by this job so far (padding excluded)."""
    rows: int
    """Rows in the part so far (durable or not)."""
    durable_rows: int
    """Rows of the part's last checkpoint queued so far (what a resumed job keeps)."""
    elapsed_s: float
    """Seconds since this job's batches started."""

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second of this job."""
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


class ProgressBar:
    """A tqdm bar on stderr over the records of the corpus, with tokens/s; a progress callback.

    Parameters
    ----------
    desc : str
        The bar's label.
    disable : bool
        Show nothing.
    """

    def __init__(self, desc: str, *, disable: bool = False) -> None:
        self.desc = desc
        self.disable = disable
        self.bar: Any = None

    def __call__(self, p: ExtractProgress) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=p.total_records,
                initial=p.records,  # a resumed job's ETA counts only its own rate
                unit="rec",
                disable=self.disable,
                dynamic_ncols=True,
                desc=self.desc,
                bar_format="{l_bar}{bar}| {n:,.0f}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
            )
        self.bar.set_postfix_str(
            f"{p.tokens_per_s:,.0f} tok/s, {p.durable_rows:,}/{p.rows:,} rows saved",
            refresh=False,
        )
        self.bar.update(p.records - self.bar.n)

    def close(self) -> None:
        """Close the bar (after the job)."""
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
