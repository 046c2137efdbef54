from xtrace_agent.cli import main

raise SystemExit(main())
