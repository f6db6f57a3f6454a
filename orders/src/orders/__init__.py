"""The orders service: reserve a ticket, cancel, expire, complete; a replica of the tickets."""
