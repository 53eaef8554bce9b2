"""Who may read what, time-boxed cases, contests, and the read audit (docs/governance.md).

- :mod:`trustlog.governance.roles`: role accounts from ``config/roles.yaml``, rendered into
  users.xml (local server) and into SQL (production server) from one model.
- :mod:`trustlog.governance.cases`: open, approve and close a case; notices to the people
  concerned.
- :mod:`trustlog.governance.contests`: an employee contests one of their own records, the
  security group decides, reports get an annotation without any person in it.
- :mod:`trustlog.governance.audit`: who holds detail access, who read what under which case,
  access left unused.
"""
