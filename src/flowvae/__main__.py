from flowvae.cli import main

raise SystemExit(main())
