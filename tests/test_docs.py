"""What users read: every docstring example runs under doctest, and no internal working names
(labels of private notes, their file names and section marks) appear in code, cards or docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "emdata"

# Internal working names and what to write instead.
INTERNAL_WORDS: dict[str, re.Pattern[str]] = {
    "a numbered note label ('seed 004'): cite the public original (paper, page, repository + commit)":
        re.compile(r"\bseed[ _-]?0\d\d", re.IGNORECASE),
    "a note called 'the seed': name the public original": re.compile(r"\bseed['’]s\b|seed_order|seed_tissue",
                                                                      re.IGNORECASE),
    "a private notes file: cite the public original": re.compile(
        r"reference/\w+\.md|\b(?:peers|ecosystem)\.md\b|\bDESIGN\.md\b|\bshared/(?:reference|seeds)\b"),
    "a section mark of private notes": re.compile(r"§|\breference §"),
    "'stored sources': say which public sources were read": re.compile(r"\bstored sources?\b", re.IGNORECASE),
    "a short name: write JackieZhai/awesome-vem-datasets": re.compile(r"awesome-vem(?!-datasets)"),
    "a short name: write tmquan/nanoCosmos": re.compile(r"(?<!tmquan/)\bnanocosmos\b", re.IGNORECASE),
    "a nickname of a source in private notes: name the repository, page or paper": re.compile(
        r"\bb3d-(?:site|pkg)\b|\bleap-(?:ex|site)\b|\bfe-platelet\b|\bneutro-ann\b|\bmitoem2-repo\b|\bawesome-old\b"
        r"|\bcremi-page\b|\bthe reference\b|\breference list\b|stored (?:material|copy)"
        r"|(?<!tmquan/)\bneurons (?:notebook|nb|DATASETS|datasets/|scripts/|CombineDataModule)"),
}
# A store key's old name, kept only to read stores written before the rename, may stay in a
# constant named LEGACY_*.
LEGACY_CONSTANT = re.compile(r'\bLEGACY_\w+ = "[^"]*"')


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _user_facing_files() -> list[Path]:
    files = [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.toml"), ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    return sorted(p for p in files if p.is_file())


def test_no_docstring_example_is_skipped() -> None:
    skipping = sorted(_rel(p) for p in PACKAGE.rglob("*.py") if "doctest: +SKIP" in p.read_text(encoding="utf-8"))
    assert not skipping, f"examples marked '# doctest: +SKIP' in {skipping}: make them run (tmp dirs, tiny arrays, " \
                         "replica writers and a loopback mirror) or delete them"


def _internal_words_in(line: str) -> list[str]:
    line = LEGACY_CONSTANT.sub("", line)
    return [f"{m.group(0)!r} is {why}" for why, pattern in INTERNAL_WORDS.items() if (m := pattern.search(line))]


def _internal_words(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [f"{_rel(path)}:{n}: {hit}" for n, line in enumerate(lines, 1) for hit in _internal_words_in(line)]


def test_no_internal_words_in_what_users_read() -> None:
    hits = [hit for p in _user_facing_files() for hit in _internal_words(p)]
    assert not hits, f"{len(hits)} internal word(s):\n" + "\n".join(hits)


@pytest.mark.parametrize("line", ["see seed 004's offset code", "(seed-003)", "SEED_004_SPACE", "the seed's region",
                                  "bbox_seed_order", "reference/datasets.md", "§5.3", "any stored source",
                                  "awesome-vem lists", "nanocosmos verified", "per b3d-site", "see the reference",
                                  "../shared/DESIGN.md",
                                  'KEY = "tissue_bbox_seed_order"'])
def test_internal_words_are_caught(line: str) -> None:
    assert _internal_words_in(line)


@pytest.mark.parametrize("line", ["rng = np.random.default_rng(seed)", "seed: int = 0", "seeds + z * drift",
                                  "JackieZhai/awesome-vem-datasets (commit 39c88271)", "tmquan/nanoCosmos",
                                  "tmquan/neurons doc/DATASETS.md",
                                  'LEGACY_TISSUE_KEY = "tissue_bbox_seed_order"'])
def test_public_names_pass(line: str) -> None:
    assert not _internal_words_in(line)


@pytest.mark.parametrize("dataset", ["cremi", "lucchi-pp", "platelet-em", "mitoem2", "human-liver-em", "j0126"])
def test_info_json_has_no_internal_words(dataset: str) -> None:
    """What `emdata info --json` prints (the card as JSON) carries none either."""
    import json

    import emdata

    text = json.dumps(emdata.info(dataset), ensure_ascii=False)
    assert not [hit for line in text.split("\\n") for hit in _internal_words_in(line)], dataset

