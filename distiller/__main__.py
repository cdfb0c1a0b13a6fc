from distiller.cli.app import main

main()
