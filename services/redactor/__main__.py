from services.redactor.app import main

main()
