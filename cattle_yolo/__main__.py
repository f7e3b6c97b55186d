import sys

from cattle_yolo.cli import main

sys.exit(main())
