from streams.app import app

app.main()
