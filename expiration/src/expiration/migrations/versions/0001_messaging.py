"""the messaging tables (the service has no tables of its own)"""

from ticketing_common.revisions.messaging_tables import downgrade, upgrade

revision = "0001"
down_revision = None
