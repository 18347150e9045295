"""`tools/train.py`, where MMDetection keeps it: the README's MMDetection recipe runs as written
(`python tools/train.py configs/tood/tood_r50_fpn_1x_coco.py --work-dir ... --cfg-options ...`)
against the stand-in `../train.py`, which has MMDetection's command line and log format."""
import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[1] / "train.py"), run_name="__main__")
