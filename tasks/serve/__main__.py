from tasks.serve.app import main

raise SystemExit(main())
