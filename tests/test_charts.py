"""Report charts: a PNG per table, with the paper's numbers marked when given."""

from PIL import Image, ImageChops

from caslie.charts import draw
from caslie.report import Row, Table


def _tables() -> tuple[Table, Table]:
    columns = [("ind", "ap"), ("ind", "sa"), ("ood", "ap")]
    rows = [Row("text", {("ind", "ap"): 0.5, ("ind", "sa"): 0.4, ("ood", "ap"): 0.3}),
            Row("mv", {("ind", "ap"): 0.9, ("ind", "sa"): None, ("ood", "ap"): 0.6}),
            Row("imprv", {("ind", "ap"): 80.0}, footer=True)]  # fmt: skip
    paper = Table("t_paper", "paper", columns, [Row("mv", {("ind", "ap"): 0.891,
                                                           ("ood", "ap"): 0.855})])  # fmt: skip
    return Table("t", "Table 2: test", columns, rows), paper


def test_a_chart_is_a_png_with_a_panel_per_split_and_paper_ticks_change_it(tmp_path):
    table, paper = _tables()
    plain = draw(table, tmp_path / "plain.png")
    marked = draw(table, tmp_path / "sub" / "marked.png", paper)
    with Image.open(plain) as a, Image.open(marked) as b:
        assert a.format == "PNG" and a.size == b.size and a.size[0] > a.size[1]
        assert len(a.convert("RGB").getcolors(1 << 16)) > 4  # bars in several colours
        assert ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is not None
