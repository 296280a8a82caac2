"""The King James Bible (public domain) from Debian's `bible-kjv`, split into train and held-out text.

Every 20th chapter (chapter counter % 20 == 7) is held out; the rest is training text. One verse per
line, verse references removed.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+)\s+(.*)$")
HELD_OUT_EVERY, HELD_OUT_AT = 20, 7

# familiar verses (all in training chapters) with one word masked, and that word: tiny-bert's target
FAMILIAR = [
    ("In the beginning God created the [MASK] and the earth.", "heaven"),
    ("And God said, Let there be [MASK]: and there was light.", "light"),
    ("The LORD is my [MASK]; I shall not want.", "shepherd"),
    ("For God so loved the [MASK], that he gave his only begotten Son, that whosoever believeth in him should not "
     "perish, but have everlasting life.", "world"),
    ("Blessed are the [MASK]: for they shall inherit the earth.", "meek"),
    ("Honour thy father and thy [MASK]: that thy days may be long upon the land which the LORD thy God giveth thee.",
     "mother"),
    ("After this manner therefore pray ye: Our Father which art in [MASK], Hallowed be thy name.", "heaven"),
    ("In the beginning was the [MASK], and the Word was with God, and the Word was God.", "word"),
    ("And the evening and the morning were the first [MASK].", "day"),
    ("Jesus saith unto him, I am the way, the truth, and the [MASK]: no man cometh unto the Father, but by me.", "life"),
]

# formulaic phrases that recur throughout the KJV, with one word masked (tiny-bert's card and tests)
FORMULAIC = [
    ("And the evening and the morning were the first [MASK].", "day"),
    ("In the beginning God created the heaven and the [MASK].", "earth"),
    ("And God [MASK], Let there be light: and there was light.", "said"),
    ("And the LORD [MASK] unto Moses, saying,", "spake"),
    ("And the children of [MASK] did evil in the sight of the LORD.", "israel"),
]


def read_chapters() -> list[list[str]]:
    """All chapters, each a list of verse texts, in canonical order."""
    raw = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters: list[list[str]] = []
    key = None
    for line in raw.splitlines():
        m = VERSE.match(line)
        if m:
            book, chapter, _, text = m.groups()
            if (book, chapter) != key:
                chapters.append([])
                key = (book, chapter)
            chapters[-1].append(" ".join(text.split()))
        elif line.strip() and chapters:  # a wrapped continuation line
            chapters[-1][-1] += " " + " ".join(line.split())
    return chapters


def prepare(data_dir: str | Path = "data") -> tuple[Path, Path]:
    """-> (train.txt, valid.txt) under data_dir, created once."""
    data_dir = Path(data_dir)
    train, valid = data_dir / "kjv_train.txt", data_dir / "kjv_valid.txt"
    if train.is_file() and valid.is_file():
        return train, valid
    data_dir.mkdir(parents=True, exist_ok=True)
    chapters = read_chapters()
    parts: dict[bool, list[str]] = {True: [], False: []}
    for i, verses in enumerate(chapters):
        parts[i % HELD_OUT_EVERY == HELD_OUT_AT].extend(verses)
    train.write_text("\n".join(parts[False]) + "\n", encoding="utf-8")
    valid.write_text("\n".join(parts[True]) + "\n", encoding="utf-8")
    log.info("KJV: %d chapters, %d train verses, %d held-out verses", len(chapters), len(parts[False]), len(parts[True]))
    return train, valid
