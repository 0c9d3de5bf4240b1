-- Policies, policy versions, attachments, thing principals, CA certificates (filled in with the registry).
SELECT 1;
