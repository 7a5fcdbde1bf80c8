"""Panda mode: babysit one model, change it as it trains, keep every branch (issue 16).

The seeds' other way to tune: "train one model at a time, trying out changes in
hyperparameters if needed". ``session.py`` is the loop, ``lineage.py`` the segments and their
branches, ``rules.py`` what it does without a person, ``control.py`` how another shell reaches
it, ``command.py`` the ``caviar panda`` commands. Neither Ray nor MLflow is imported here: the
model trains behind ``trainer.Trainer`` (a Ray actor in ``engine/panda_actor.py``) and MLflow
is written through ``store/``.
"""
