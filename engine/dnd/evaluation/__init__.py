"""Evaluations of section 4.2.1 (`dnd eval fc`) and the use-case analyses of section 5 and A.6 (`dnd analyze`)."""
