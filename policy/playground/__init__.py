"""The playground: watch a checkpoint act in a browser, step by step.

session.py     one tab's episode: scene, actor (checkpoint, second checkpoint, oracle), video
dataset.py     a stored dataset's episodes in the same view, with the checkpoint's opinion
introspect.py  per-dimension bin distributions and RT-1's TokenLearner attention, via hooks
views.py       the pictures: enlarged frames, heat map, distribution bars
app.py         the page (gradio) and its server: loopback by default, a token elsewhere

`scripts/play.py` (conf/play.yaml) is the entry point; `make play` installs the `play` extra.
"""
