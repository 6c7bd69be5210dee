"""Memory limits: the limit that kills this kernel (:mod:`.cgroups`), the guard that stops a cell
before it is reached (:mod:`.guard`), and the flight record that explains a kernel that died anyway
(:mod:`.flight`)."""
