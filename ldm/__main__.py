from ldm.cli import main

raise SystemExit(main())
