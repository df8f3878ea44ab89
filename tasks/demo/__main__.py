from tasks.demo.runner import main

raise SystemExit(main())
