import sys

from coa_lora.cli import main

sys.exit(main())
