"""The peer: joins a coordinator, keeps its lease alive, serves the stage it is told to load."""
