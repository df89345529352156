"""A PNG chart per report table: grouped bars of each row's primary metric per task, one panel per
split (IND, OOD), with the paper's published number as a black tick over a bar that reproduces one."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from caslie.report import Table, header  # noqa: E402


def draw(table: Table, path: Path, paper: Table | None = None) -> Path:
    """Draw ``table``'s body rows (footer rows are percentages, not drawn) into ``path``.

    Args:
        table: The table.
        path: The PNG to write.
        paper: The paper's numbers for the same rows (:func:`caslie.report.paper_table`).

    Returns:
        ``path``.
    """
    rows = table.body()
    splits = list(dict.fromkeys(s for s, _ in table.columns))
    published = {r.label: r.cells for r in paper.rows} if paper else {}
    widths = [sum(1 for c in table.columns if c[0] == s) for s in splits]
    fig, axes = plt.subplots(1, len(splits), figsize=(1.3 * sum(widths) + 2, 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": widths}, sharey=True)  # fmt: skip
    bar = 0.8 / max(len(rows), 1)
    for ax, split in zip(axes[0], splits, strict=True):
        columns = [c for c in table.columns if c[0] == split]
        for i, row in enumerate(rows):
            xs = [j + (i - (len(rows) - 1) / 2) * bar for j in range(len(columns))]
            values = [row.cells.get(c) for c in columns]
            ax.bar(xs, [v or 0.0 for v in values], bar, label=row.label)
            theirs = published.get(row.label, {})
            ticks = [(x, theirs.get(c)) for x, c in zip(xs, columns, strict=True)
                     if theirs.get(c) is not None]  # fmt: skip
            if ticks:
                ax.scatter(*zip(*ticks, strict=True), marker="_", s=220, color="black",
                           zorder=3, label="paper" if i == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([header(*c).split(" ", 1)[1] for c in columns], fontsize=8)
        ax.set_title(split.upper())
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("primary metric")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
               frameon=False)  # fmt: skip
    fig.suptitle(table.title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * (len(labels) // 5), 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
