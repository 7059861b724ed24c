//! Contacts and companies. A contact first seen in mail or a form is a
//! `visitor` until an agent makes them a `contact` or attaches them to one
//! (a merge: the merged row keeps its address and points at the survivor,
//! so later mail from that address lands on the survivor). A company has
//! mail domains; a new contact with an address in one belongs to it.

use serde::Serialize;

use super::sql::{contains_pattern, Binds};
use super::{Store, Tx};
use crate::mail::Mailbox;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ContactView {
    pub id: i64,
    pub email: String,
    pub name: Option<String>,
    /// `visitor` (first seen in mail or a form) or `contact`.
    pub kind: String,
    pub company_id: Option<i64>,
    /// Set when attached to another contact (this address is theirs now).
    pub merged_into: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CompanyView {
    pub id: i64,
    pub name: String,
    pub domains: Vec<String>,
}

/// Which contacts a list wants.
#[derive(Debug, Clone, Default)]
pub struct ContactQuery {
    /// Text in the address or name.
    pub text: Option<String>,
    pub kind: Option<String>,
    pub company: Option<i64>,
    /// Ids below this one (the cursor).
    pub before: Option<i64>,
    pub limit: i64,
}

const CONTACT: &str =
    "SELECT id, email, name, kind, company_id, merged_into, created_at FROM contacts";

impl Store {
    /// The contact `person` is (following an attachment to another), made
    /// a contact of the company of their domain when new.
    pub async fn contact_for(
        &self,
        tx: &mut Tx,
        person: &Mailbox,
        now: i64,
    ) -> Result<i64, sqlx::Error> {
        let domain = person.address.rsplit_once('@').map(|(_, d)| d.to_string());
        sqlx::query(
            "INSERT INTO contacts (email, name, company_id, created_at)
             VALUES ($1, $2, (SELECT company_id FROM company_domains WHERE domain = $3), $4)
             ON CONFLICT (email) DO NOTHING",
        )
        .bind(&person.address)
        .bind(&person.name)
        .bind(domain)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        sqlx::query_scalar("SELECT COALESCE(merged_into, id) FROM contacts WHERE email = $1")
            .bind(&person.address)
            .fetch_one(&mut **tx)
            .await
    }

    pub async fn contacts(&self, query: &ContactQuery) -> Result<Vec<ContactView>, sqlx::Error> {
        let mut binds = Binds::new(self.backend());
        let mut sql = format!("{CONTACT} WHERE merged_into IS NULL");
        if let Some(text) = &query.text {
            let pattern = contains_pattern(text);
            let (a, b) = (binds.push(pattern.clone()), binds.push(pattern));
            sql.push_str(&format!(
                " AND (email LIKE {a} ESCAPE '\\' OR LOWER(COALESCE(name, '')) LIKE {b} ESCAPE '\\')"
            ));
        }
        if let Some(kind) = &query.kind {
            sql.push_str(&format!(" AND kind = {}", binds.push(kind.clone())));
        }
        if let Some(company) = query.company {
            sql.push_str(&format!(" AND company_id = {}", binds.push(company)));
        }
        if let Some(before) = query.before {
            sql.push_str(&format!(" AND id < {}", binds.push(before)));
        }
        sql.push_str(&format!(
            " ORDER BY id DESC LIMIT {}",
            binds.push(query.limit)
        ));
        sqlx::query_as_with(&sql, binds.args)
            .fetch_all(self.pool())
            .await
    }

    pub async fn contact(&self, id: i64) -> Result<Option<ContactView>, sqlx::Error> {
        sqlx::query_as(&format!("{CONTACT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await
    }

    pub async fn contact_by_email(&self, email: &str) -> Result<Option<ContactView>, sqlx::Error> {
        sqlx::query_as(&format!("{CONTACT} WHERE email = $1"))
            .bind(email)
            .fetch_optional(self.pool())
            .await
    }

    /// Creates a contact, or makes the visitor with that address one.
    /// Returns (id, created).
    pub async fn create_contact(
        &self,
        person: &Mailbox,
        company: Option<i64>,
        now: i64,
    ) -> Result<(i64, bool), sqlx::Error> {
        let mut w = self.begin_write().await?;
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT COALESCE(merged_into, id) FROM contacts WHERE email = $1")
                .bind(&person.address)
                .fetch_optional(&mut *w.tx)
                .await?;
        let created = existing.is_none();
        let id = match existing {
            Some(id) => id,
            None => self.contact_for(&mut w.tx, person, now).await?,
        };
        sqlx::query(
            "UPDATE contacts SET kind = 'contact', name = COALESCE($1, name),
               company_id = COALESCE($2, company_id) WHERE id = $3",
        )
        .bind(&person.name)
        .bind(company)
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok((id, created))
    }

    /// Sets a contact's name, kind and company (each when given).
    pub async fn edit_contact(
        &self,
        id: i64,
        name: Option<&str>,
        kind: Option<&str>,
        company: Option<i64>,
    ) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let found = sqlx::query(
            "UPDATE contacts SET name = COALESCE($1, name), kind = COALESCE($2, kind),
               company_id = COALESCE($3, company_id) WHERE id = $4 AND merged_into IS NULL",
        )
        .bind(name)
        .bind(kind)
        .bind(company)
        .bind(id)
        .execute(&mut *w.tx)
        .await?
        .rows_affected()
            == 1;
        w.commit().await?;
        Ok(found)
    }

    /// Attaches contact `from` to contact `into`: its tickets and messages
    /// become theirs, and its address resolves to them from now on.
    pub async fn merge_contacts(
        &self,
        tx: &mut Tx,
        from: i64,
        into: i64,
    ) -> Result<(), sqlx::Error> {
        let statements = [
            "INSERT INTO ticket_contacts (ticket_id, contact_id, role)
             SELECT ticket_id, $2, role FROM ticket_contacts WHERE contact_id = $1
             ON CONFLICT (ticket_id, contact_id) DO NOTHING",
            "DELETE FROM ticket_contacts WHERE contact_id = $1",
            "UPDATE messages SET author_contact_id = $2 WHERE author_contact_id = $1",
            "UPDATE contacts SET merged_into = $2 WHERE id = $1 OR merged_into = $1",
            "UPDATE contacts SET company_id = (SELECT company_id FROM contacts WHERE id = $1)
             WHERE id = $2 AND company_id IS NULL",
        ];
        for sql in statements {
            sqlx::query(sql)
                .bind(from)
                .bind(into)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// The tickets (ids) a contact takes part in.
    pub async fn contact_ticket_ids(
        &self,
        tx: &mut Tx,
        contact: i64,
    ) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT ticket_id FROM ticket_contacts WHERE contact_id = $1")
            .bind(contact)
            .fetch_all(&mut **tx)
            .await
    }

    pub async fn company_exists(&self, tx: &mut Tx, id: i64) -> Result<bool, sqlx::Error> {
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM companies WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(found.is_some())
    }

    pub async fn contact_company(
        &self,
        tx: &mut Tx,
        contact: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        let company: Option<Option<i64>> =
            sqlx::query_scalar("SELECT company_id FROM contacts WHERE id = $1")
                .bind(contact)
                .fetch_optional(&mut **tx)
                .await?;
        Ok(company.flatten())
    }

    pub async fn companies(&self) -> Result<Vec<CompanyView>, sqlx::Error> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, name FROM companies ORDER BY name, id")
                .fetch_all(self.pool())
                .await?;
        let domains: Vec<(i64, String)> =
            sqlx::query_as("SELECT company_id, domain FROM company_domains ORDER BY domain")
                .fetch_all(self.pool())
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| CompanyView {
                id,
                name,
                domains: domains
                    .iter()
                    .filter(|(c, _)| *c == id)
                    .map(|(_, d)| d.clone())
                    .collect(),
            })
            .collect())
    }

    pub async fn company(&self, id: i64) -> Result<Option<CompanyView>, sqlx::Error> {
        let name: Option<String> = sqlx::query_scalar("SELECT name FROM companies WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        let Some(name) = name else {
            return Ok(None);
        };
        let domains = sqlx::query_scalar(
            "SELECT domain FROM company_domains WHERE company_id = $1 ORDER BY domain",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        Ok(Some(CompanyView { id, name, domains }))
    }

    /// The company owning one of `domains`, other than `except`.
    pub async fn domain_owner(
        &self,
        tx: &mut Tx,
        domains: &[String],
        except: Option<i64>,
    ) -> Result<Option<(String, i64)>, sqlx::Error> {
        for domain in domains {
            let owner: Option<i64> =
                sqlx::query_scalar("SELECT company_id FROM company_domains WHERE domain = $1")
                    .bind(domain)
                    .fetch_optional(&mut **tx)
                    .await?;
            if let Some(owner) = owner.filter(|o| Some(*o) != except) {
                return Ok(Some((domain.clone(), owner)));
            }
        }
        Ok(None)
    }

    /// Creates a company (`id` None) or renames it and replaces its domains.
    /// Contacts without a company whose address is in one of the domains
    /// join it. Returns the id, or None when `id` does not exist.
    pub async fn save_company(
        &self,
        tx: &mut Tx,
        id: Option<i64>,
        name: &str,
        domains: &[String],
    ) -> Result<Option<i64>, sqlx::Error> {
        let id = match id {
            None => {
                sqlx::query_scalar("INSERT INTO companies (name) VALUES ($1) RETURNING id")
                    .bind(name)
                    .fetch_one(&mut **tx)
                    .await?
            }
            Some(id) => {
                let found = sqlx::query("UPDATE companies SET name = $1 WHERE id = $2")
                    .bind(name)
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                if found.rows_affected() == 0 {
                    return Ok(None);
                }
                sqlx::query("DELETE FROM company_domains WHERE company_id = $1")
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                id
            }
        };
        for domain in domains {
            sqlx::query("INSERT INTO company_domains (domain, company_id) VALUES ($1, $2)")
                .bind(domain)
                .bind(id)
                .execute(&mut **tx)
                .await?;
            // Domains are checked to hold no LIKE wildcards.
            let suffix = format!("%@{domain}");
            sqlx::query(
                "UPDATE contacts SET company_id = $1 WHERE company_id IS NULL AND email LIKE $2",
            )
            .bind(id)
            .bind(suffix)
            .execute(&mut **tx)
            .await?;
        }
        Ok(Some(id))
    }
}
