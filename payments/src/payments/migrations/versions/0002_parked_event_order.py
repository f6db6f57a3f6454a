"""parked events know their entity, so later events of it wait behind them"""

from ticketing_common.revisions.parked_event_order import downgrade, upgrade

revision = "0002"
down_revision = "0001"
