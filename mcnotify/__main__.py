from mcnotify.cli import main

main()
