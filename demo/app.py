"""Run the clip-cir web demo: `python demo/app.py --dataset cirr --data-root D [--pretrained ...]`.

The same program as `clip-cir demo` (same options, see --help); the code is in clip_cir/apps/demo/.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from clip_cir.apps.demo.app import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="demo/app.py")
