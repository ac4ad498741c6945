from tilesegcli.cli.main import main

main()
