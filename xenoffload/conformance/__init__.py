"""Protocol conformance suite: plays one end of a vif against any implementation and judges it.
"""
