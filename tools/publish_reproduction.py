"""Copy a finished `vggtool reproduce` run's report into the docs: DIR/REPORT.md -> docs/reproduction.md and
its plots -> docs/reproduction/*.png (the image links rewritten), refusing a run that has not finished.

    python tools/publish_reproduction.py /work/repro_full

The report already names the command and the commit it came from; README section 9 links the page."""
import argparse
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)/]+\.png)\)")


def publish(run_dir, docs):
    report = os.path.join(run_dir, "REPORT.md")
    if not os.path.exists(report) or not os.path.exists(os.path.join(run_dir, "results.json")):
        raise SystemExit(f"{run_dir}: no REPORT.md and results.json (has the run finished?)")
    with open(report, encoding="utf-8") as f:
        text = f.read()
    images = IMAGE.findall(text)
    os.makedirs(os.path.join(docs, "reproduction"), exist_ok=True)
    for _, name in images:
        src = os.path.join(run_dir, name)
        if not os.path.exists(src):
            raise SystemExit(f"{src}: the report links it but it is missing")
        shutil.copyfile(src, os.path.join(docs, "reproduction", name))
    text = IMAGE.sub(lambda m: f"![{m.group(1)}](reproduction/{m.group(2)})", text)
    tmp = os.path.join(docs, ".reproduction.md.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, os.path.join(docs, "reproduction.md"))
    return [name for _, name in images]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the --out folder of a finished `vggtool reproduce`")
    parser.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="docs folder (default: the checkout's)")
    args = parser.parse_args(argv)
    names = publish(args.run_dir, args.docs)
    print(f"wrote {os.path.join(args.docs, 'reproduction.md')} and {len(names)} plot(s) in "
          f"{os.path.join(args.docs, 'reproduction')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
