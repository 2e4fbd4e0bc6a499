import ArgumentParser

Kestrel.main()
