"""python -m gradcheck_cli"""

from gradcheck_cli.front import main

main()
