"""Helpers the tests import or run (peers, wire codec, kernel VM and its scenarios); not tests."""
