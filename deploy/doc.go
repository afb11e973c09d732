// Package deploy holds what runs beside promoted to watch it: the
// Prometheus configuration and alert rules, and Grafana's provisioning and
// dashboard, which docker-compose.yml at the repository's root mounts.
//
// It has no code of its own. Its tests read those files the way
// Prometheus, Grafana and Compose will, and check that every metric they
// name is one promoted really exports, so a renamed metric breaks the
// build instead of an alert that silently never fires.
package deploy
