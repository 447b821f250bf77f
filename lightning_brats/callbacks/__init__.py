"""Lightning callbacks registered in ``conf/callbacks/default.yaml``: validation pictures for every
logger that holds images (:mod:`.pictures`) and the run's model card (:mod:`.model_card`).
:mod:`.publish` says what each kind of logger can hold."""
