from tests.corpus.synth import main

main()
