"""Who is calling and what they may do: credentials, certificates, the authorization table, the audit trail."""
