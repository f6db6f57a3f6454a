from ticketing_common.migrations import run_env
from tickets.models import Base

run_env(Base.metadata)
