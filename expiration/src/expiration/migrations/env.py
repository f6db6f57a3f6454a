from expiration.models import Base
from ticketing_common.migrations import run_env

run_env(Base.metadata)
