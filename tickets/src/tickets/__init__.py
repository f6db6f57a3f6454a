"""The tickets service: tickets for sale, their reservations by orders, and their events."""
