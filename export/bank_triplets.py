"""Parse every caption of an export's caption bank once, at export time, so the runtime never loads spaCy.

    python -m kcdp_export.bank_triplets EXPORT

Training parses the retrieved caption with TripletParser; a retrieval captioner only ever returns
bank captions, so their triplets can be computed ahead of time with the very same parser. This
writes them into caption_bank/captions.jsonl ("triplets"; any earlier value is kept as
"source_triplets"), records the parser version as manifest caption_bank.triplets_parser (the
runtime trusts bank triplets only when it equals knowledge.parser.version), and updates the
file's sha256 in the manifest. spaCy's import and load are most of a cold start otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kcdp_runtime.manifest import sha256


def add_bank_triplets(folder: str | Path, batch_size: int = 256) -> int:
    """Returns the number of captions parsed. Idempotent."""
    from kcdp_core.knowledge.triplets import PARSER_VERSION, TripletParser

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    spec = manifest.get("caption_bank")
    if not spec:
        raise ValueError(f"{folder}: no caption_bank in manifest.json")
    parser_spec = manifest.setdefault("knowledge", {}).setdefault("parser", {})
    version = parser_spec.get("version") or PARSER_VERSION
    if version != PARSER_VERSION:
        raise ValueError(
            f"{folder}: exported with parser {version}, this kcdp has {PARSER_VERSION}; re-export instead"
        )
    parser_spec["version"] = version
    parser = TripletParser(parser_spec.get("model", "en_core_web_sm"))
    path = folder / spec["captions"]
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    parsed = parser.parse_many([str(r["caption"]) for r in rows], batch_size=batch_size)
    with path.open("w", encoding="utf-8") as fh:
        for row, triplets in zip(rows, parsed, strict=True):
            if "triplets" in row and "source_triplets" not in row and spec.get("triplets_parser") != version:
                row["source_triplets"] = row["triplets"]
            row["triplets"] = [list(t) for t in triplets]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    spec["triplets_parser"] = version
    files = manifest.setdefault("files", {})
    files[spec["captions"]] = sha256(path)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kcdp_export.bank_triplets", description=__doc__.splitlines()[0]
    )
    parser.add_argument("export", help="export folder (manifest.json with a caption_bank)")
    args = parser.parse_args(argv)
    try:
        n = add_bank_triplets(args.export)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.export}: parsed {n} bank captions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
