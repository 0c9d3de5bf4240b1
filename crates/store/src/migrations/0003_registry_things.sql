-- Things, thing types, thing groups and tags (filled in with the registry).
SELECT 1;
