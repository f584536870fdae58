from fastfog.cli import main

raise SystemExit(main())
