"""`regrow drift --report`: a self-contained page that draws every row, escapes every text, puts drifted
features first, and renders in a real browser (Debian's chromium, headless) as its SVG says."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from regrow.api.driftpolicy import DriftPolicySpec
from regrow.cli import main
from regrow.drift.backtest import Window, windows
from regrow.drift.profile import Profile, fit_columns, fit_profile
from regrow.drift.report import LIVE, PLOT_HEIGHT, REFERENCE, Compared, edge_texts, report
from tests.conftest import _missing

SPEC = DriftPolicySpec.model_validate({"targetRef": {"name": "backtest"}, "minSamples": 100})
HOSTILE = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
VOID = {"meta", "br", "img", "input", "link", "hr"}
SVG_LEAVES = {"line", "rect", "text", "title"}  # SVG elements the page closes itself


@dataclass
class Page(HTMLParser):
    """The page's structure: tags must nest, sections (their feature and tag), and each SVG's bars."""

    tags: list[str] = field(default_factory=list)
    stack: list[str] = field(default_factory=list)
    attributes: list[tuple[str, str]] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)  # (h2 text, drifted or stable)
    bars: list[list[tuple[str, float, float, str]]] = field(default_factory=list)  # per SVG: fill, width, height, title
    text: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(name, value or "") for name, value in attrs]
        attributes = dict(attrs)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "svg":
            self.bars.append([])
        if tag == "rect":
            size = (float(str(attributes["width"])), float(str(attributes["height"])))
            self.bars[-1].append((str(attributes["fill"]), *size, ""))
        if tag == "span" and self.stack[-2:-1] == ["h2"]:
            self.sections[-1] = (self.sections[-1][0], str(attributes["class"]).split()[-1])
        if tag == "h2":
            self.sections.append(("", ""))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if "h2" in self.stack:
            self.sections[-1] = (self.sections[-1][0] + data, self.sections[-1][1])
        if self.stack and self.stack[-1] == "title" and "rect" in self.stack:
            self.bars[-1][-1] = (*self.bars[-1][-1][:3], data)


def parsed(page: str) -> Page:
    result = Page()
    result.feed(page)
    result.close()
    assert result.stack == [], f"unclosed: {result.stack}"
    return result


def _whole(profile: Profile, x: npt.NDArray[Any], spec: DriftPolicySpec = SPEC) -> tuple[str, Window]:
    (whole,) = windows(profile, x, spec, None)
    return report(profile, whole, [whole], Compared("profile.json", "live.csv", "the default tests", spec)), whole


def _numeric(rng: np.random.Generator, rows: int, shift: list[float]) -> tuple[Profile, npt.NDArray[Any]]:
    reference = rng.normal(size=(2000, len(shift)))
    reference[:, -1] = np.round(reference[:, -1])  # a few frequent values: bins of one value
    live = rng.normal(size=(rows, len(shift))) + np.array(shift)
    live[:, -1] = np.round(live[:, -1])
    live[::17, 0] = np.nan
    return fit_profile(reference, [f"x{j}" for j in range(len(shift))]), live


def _mixed(rng: np.random.Generator, rows: int, shift: list[float]) -> tuple[Profile, npt.NDArray[Any]]:
    colours = np.array(["red", "green", "blue", HOSTILE])
    reference = [rng.choice(colours, 2000, p=[0.4, 0.3, 0.2, 0.1]), rng.normal(size=2000)]
    profile = fit_columns(reference, [HOSTILE, "size"], {HOSTILE})
    live = np.empty((rows, 2), dtype=object)
    live[:, 0] = rng.choice([*colours, "violet", ""], rows, p=[0.1, 0.1, 0.2, 0.2, 0.3, 0.1])  # unseen, missing
    live[:, 1] = rng.normal(size=rows) + shift[0]
    return profile, live


SHAPES: dict[str, Callable[[np.random.Generator, int, list[float]], tuple[Profile, npt.NDArray[Any]]]] = {
    "numeric": _numeric,
    "categorical": _mixed,
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("rows", "shift"), [(3000, [0.0, 0.0, 0.0]), (3000, [1.5, 0.0, 0.8]), (5, [2.0, 0.0, 0.0]),
                                             (400, [0.0, 3.0, 0.0])])  # fmt: skip
def test_the_page_draws_every_row_of_every_feature_drifted_first(shape: str, rows: int, shift: list[float]) -> None:
    profile, x = SHAPES[shape](np.random.default_rng(rows), rows, shift)
    page, whole = _whole(profile, x)
    html = parsed(page)

    # Self-contained: nothing fetched, nothing run; links only within the page.
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(html.tags)
    assert all(not name.startswith("on") and name != "src" for name, _ in html.attributes)
    assert all(value.startswith("#") for name, value in html.attributes if name == "href")
    assert "url(" not in page and "@import" not in page
    assert set(re.findall(r"https?://[^\"' ]+", page)) <= {"http://www.w3.org/2000/svg"}

    # One section per feature, drifted ones first, each as the check decided.
    sections = [s for s in html.sections if s[1]]
    assert sorted(name for name, _ in sections) == sorted(f.name + tag for f, tag in zip(
        profile.features, ["drifted" if d else "stable" for d in whole.result.drifted], strict=True))  # fmt: skip
    tags = [tag for _, tag in sections]
    assert tags == sorted(tags)  # "drifted" < "stable"
    assert tags.count("drifted") == int(whole.result.drifted.sum())

    # Every row is drawn: the live bars' counts add up to the rows, the reference's to the profile's rows,
    # and the tallest bar of each chart reaches the top.
    assert len(html.bars) == len(profile.features)
    for bars in html.bars:
        counts = {fill: sum(int(re.findall(r": ([\d,]+) rows", title)[0].replace(",", "")) for f, _, _, title in bars
                            if f == fill) for fill in (REFERENCE, LIVE)}  # fmt: skip
        assert counts == {REFERENCE: profile.rows, LIVE: len(x)}
        assert max(height for _, _, height, _ in bars) == pytest.approx(PLOT_HEIGHT, abs=0.1)
        assert min(height for _, _, height, _ in bars) >= 0

    for j, drifted in enumerate(whole.result.drifted):  # a judged feature's summary marks what drifted it
        row = re.search(rf'<tr><td><a href="#f{j}">.*?</tr>', page)
        assert row is not None
        assert rows < SPEC.min_samples or ('class="past"' in row[0]) == bool(drifted), row[0]

    verdict = re.search(r'class="verdict (\w+)"', page)
    assert verdict is not None
    expected = "unjudged" if rows < SPEC.min_samples else "drift" if whole.result.breached else "quiet"
    assert verdict[1] == expected
    if shape == "categorical":  # the hostile name and category, shown as text only
        assert HOSTILE not in page and HOSTILE in "".join(html.text)


def test_bins_of_one_value_and_close_edges_are_told_apart() -> None:
    assert edge_texts((0.1, 0.2, 0.20000002, 0.4)) == ["0.1", "0.2", "0.2", "0.4"]  # one value: one text
    assert edge_texts((1.0, 1.0001, 1.0002)) == ["1", "1.0001", "1.0002"]
    assert edge_texts((1000.0, 123456.0)) == ["1e+03", "1.23e+05"]


def test_the_command_writes_the_report_beside_its_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile, x = _numeric(np.random.default_rng(0), 1800, [2.0, 0.0, 0.0])
    (tmp_path / "profile.json").write_bytes(profile.to_json())
    data = "x0,x1,x2\n" + "\n".join(",".join("" if np.isnan(v) else f"{v:.4f}" for v in row) for row in x)
    (tmp_path / "live.csv").write_text(data)
    argv = ["drift", "--profile", str(tmp_path / "profile.json"), "--data", str(tmp_path / "live.csv"),
            "--window-rows", "600", "--fail-on-breach"]  # fmt: skip
    assert main([*argv, "--report", str(tmp_path / "report.html")]) == 1
    assert len(capsys.readouterr().out.splitlines()) == 3  # the JSON lines, as without --report
    page = parsed((tmp_path / "report.html").read_text())
    assert page.sections[0] == ("Windows", "") and next(s for s in page.sections if s[1]) == ("x0drifted", "drifted")
    assert main([*argv, "--report", str(tmp_path)]) == 2  # a directory: said, not raised
    assert "regrow drift:" in capsys.readouterr().err


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Callable[[Path, int, int], npt.NDArray[np.uint8]]]:
    """``shoot(page, width, height)``: the page as Debian's chromium renders it headless, as RGB pixels."""
    binary = shutil.which("chromium")
    if binary is None:
        _missing("the drift report's rendering test needs Debian's chromium (apt-get install chromium)")
    from PIL import Image  # noqa: PLC0415 - only this test reads images

    def shoot(page: Path, width: int, height: int) -> npt.NDArray[np.uint8]:
        shot = tmp_path / "shot.png"
        subprocess.run([str(binary), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--force-device-scale-factor=1", f"--window-size={width},{height}", f"--screenshot={shot}",
                        f"--user-data-dir={tmp_path / 'profile'}", page.as_uri()],
                       capture_output=True, timeout=60, check=True)  # fmt: skip
        return np.asarray(Image.open(shot).convert("RGB"))

    yield shoot


def _pixels(image: npt.NDArray[np.uint8], colour: str) -> int:
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return int((image == np.array(rgb, dtype=np.uint8)).all(axis=2).sum())


@pytest.mark.parametrize("shift", [[1.5, 0.0, 0.8], [0.0, 0.0, 0.0]], ids=["drift", "quiet"])
def test_the_browser_draws_the_bars_and_the_verdict(
    chromium: Callable[[Path, int, int], npt.NDArray[np.uint8]], tmp_path: Path, shift: list[float]
) -> None:
    profile, x = _numeric(np.random.default_rng(1), 3000, shift)
    page, whole = _whole(profile, x)
    (tmp_path / "report.html").write_text(page)
    image = chromium(tmp_path / "report.html", 1200, 2400)
    bars = parsed(page).bars
    for colour in (REFERENCE, LIVE):
        expected = sum(width * height for svg in bars for fill, width, height, _ in svg if fill == colour) + 12 * 12
        assert 0.8 * expected <= _pixels(image, colour) <= 1.05 * expected, colour
    verdict_background = "#fde2e1" if whole.result.breached else "#e3f1e1"
    other = "#e3f1e1" if whole.result.breached else "#fde2e1"
    assert _pixels(image, verdict_background) > 5000 and _pixels(image, other) == 0
