"""Snapshot groups (issue 15): one snapshot per member filesystem at one shared point in time.

Composes the members' own methods (reached through the registry and the
:class:`~snapkit.methods.base.Groupable` protocol, never by importing a family):
``create.py`` plans the group's create, ``recover.py`` settles a group a crash cut short.
"""

GROUP_KEY = "group"  # a member record's details: the name of its group

__all__ = ["GROUP_KEY"]
