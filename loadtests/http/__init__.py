"""The HTTP benchmark's peers (hello-world apps, their launcher) and its wrk Lua scripts."""
