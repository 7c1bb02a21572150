"""The HTTP benchmark's peers (hello-world apps, the granian launcher) and its wrk Lua scripts."""
