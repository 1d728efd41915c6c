"""Copy a finished `vggtool reproduce` run's report into the docs: DIR/REPORT.md -> docs/reproduction.md and
its plots -> docs/reproduction/*.png (the image links rewritten), refusing a run that has not finished.
`--name N` publishes beside it instead, as docs/N.md and docs/N/*.png (a rerun, say).

    python tools/publish_reproduction.py /work/repro_full
    python tools/publish_reproduction.py /work/repro3_out --name reproduction_rerun

The report already names the command and the commit it came from; README section 9 links the page."""
import argparse
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)/]+\.png)\)")


def publish(run_dir, docs, name="reproduction"):
    report = os.path.join(run_dir, "REPORT.md")
    if not os.path.exists(report) or not os.path.exists(os.path.join(run_dir, "results.json")):
        raise SystemExit(f"{run_dir}: no REPORT.md and results.json (has the run finished?)")
    with open(report, encoding="utf-8") as f:
        text = f.read()
    images = IMAGE.findall(text)
    os.makedirs(os.path.join(docs, name), exist_ok=True)
    for _, image in images:
        src = os.path.join(run_dir, image)
        if not os.path.exists(src):
            raise SystemExit(f"{src}: the report links it but it is missing")
        shutil.copyfile(src, os.path.join(docs, name, image))
    text = IMAGE.sub(lambda m: f"![{m.group(1)}]({name}/{m.group(2)})", text)
    tmp = os.path.join(docs, f".{name}.md.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, os.path.join(docs, f"{name}.md"))
    return [image for _, image in images]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the --out folder of a finished `vggtool reproduce`")
    parser.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="docs folder (default: the checkout's)")
    parser.add_argument("--name", default="reproduction", help="the page's name: docs/NAME.md, plots in docs/NAME/")
    args = parser.parse_args(argv)
    names = publish(args.run_dir, args.docs, args.name)
    print(f"wrote {os.path.join(args.docs, args.name + '.md')} and {len(names)} plot(s) in "
          f"{os.path.join(args.docs, args.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
