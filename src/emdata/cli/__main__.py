from emdata.cli import main

main()
