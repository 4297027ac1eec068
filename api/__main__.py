from api.cli import main

if __name__ == "__main__":  # not when a spawned process (a served duplicate search) imports it
    main()
