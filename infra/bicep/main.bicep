// Mailbox Connect: everything `azd up` creates, in one resource group.
//
// Secure by default:
//   - one user-assigned managed identity for everything the app touches (storage, Key Vault, App Insights);
//   - no shared keys anywhere: the storage account refuses them, App Insights refuses local auth,
//     Key Vault uses Azure RBAC; there is no listKeys() and no secret in any app setting or output;
//   - the link-signing key (Key Vault secret `mc-signing-key`) is NOT created here: the postprovision hook
//     creates it once, on the admin's machine, so its value never passes through a template parameter,
//     the deployment history or an output (see docs/deploy.md).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; it seeds the unique names of all resources.')
param environmentName string

// Regions that offer the Flex Consumption plan (Microsoft's own Flex quickstart template, public Azure;
// `az functionapp list-flexconsumption-locations` lists today's). A region outside the list fails here,
// before anything is created: the purge-protected Key Vault could not be created again under its name.
// Where Microsoft adds a region, or for a sovereign cloud that offers Flex, add it to this list.
@minLength(1)
@description('Region of every resource. It must offer the Flex Consumption plan (az functionapp list-flexconsumption-locations).')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the admin who runs azd (AZURE_PRINCIPAL_ID). It gets the data-plane roles the admin CLI needs. Empty: none.')
param principalId string = ''

@description('Kind of principal in principalId (AZURE_PRINCIPAL_TYPE): User, ServicePrincipal or Group. Empty: Azure looks it up, which works for a person and for a pipeline alike.')
@allowed([
  ''
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = ''

@description('Public base URL when a custom domain fronts the app (MC_CUSTOM_PUBLIC_URL). Empty: https://<default host name>.')
param customPublicUrl string = ''

@description('Comma-separated origins that redirectUrl must match (MC_REDIRECT_ALLOWLIST). Empty: any https origin.')
param redirectAllowlist string = ''

@description('Prefix of every table name (MC_TABLE_PREFIX): letters and digits, starting with a letter, or empty.')
@maxLength(21)
param tablePrefix string = ''

@description('Default lifetime of a sign-in link, in seconds (MC_LINK_TTL_SECONDS).')
@minValue(60)
param linkTtlSeconds int = 86400

@description('Longest lifetime a caller may ask for a sign-in link, in seconds (MC_LINK_MAX_TTL_SECONDS).')
@minValue(60)
param linkMaxTtlSeconds int = 604800

@description('Lifetime of a pending sign-in (the OAuth flow state), in seconds (MC_FLOW_TTL_SECONDS).')
@minValue(60)
param flowTtlSeconds int = 900

@description('Mailbox access check at sign-in (MC_ACCESS_CHECK): on (a check that cannot run does not block), strict (it blocks), off (e.g. outbound IMAP is firewalled).')
@allowed([
  'on'
  'strict'
  'off'
])
param accessCheck string = 'on'

@description('Where refresh tokens and client secrets live (MC_SECRET_MODE): keyvault (one Key Vault secret each) or envelope (sealed on the Table rows under data keys wrapped by the Key Vault key dataKeyName; Key Vault calls per instance, not per credential). Move a running deployment with python -m shared.cli migrate-secrets.')
@allowed([
  'keyvault'
  'envelope'
])
param tokenStorageMode string = 'keyvault'

@description('Comma-separated URLs that receive every webhook event (MC_WEBHOOK_URLS), signed with Key Vault secret mc-webhook-secret. Empty: only webhooks registered through /v1/webhooks.')
param webhookUrls string = ''

@description('redirectUrl of the re-authentication link in authenticationError webhooks (MC_REAUTH_REDIRECT_URL). Empty: the account\'s last sign-in redirectUrl.')
param reauthRedirectUrl string = ''

@description('Refresh credentials whose refresh token was written more than this many days ago (MC_KEEPALIVE_DAYS; Microsoft expires them after 90 idle days).')
@minValue(1)
@maxValue(80)
param keepaliveDays int = 30

@description('Most credentials the hourly keep-alive refreshes per run (MC_KEEPALIVE_MAX_PER_RUN; each is a Key Vault write). 0 disables it.')
@minValue(0)
@maxValue(10000)
param keepaliveMaxPerRun int = 50

@description('Most instances the Flex Consumption plan may scale out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Private networking: the app joins a VNet; Table/Blob/Queue storage and Key Vault are reachable only through private endpoints (public network access off, firewalls deny). The hosted pages and the API stay public. The admin path then goes through the admin API (docs/deploy.md).')
param privateNetworking bool = false

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

// Two identities: the runtime one (code, host storage, Key Vault, telemetry) and the deployment one (the
// package container only), so the code's own identity cannot overwrite the code it runs.
module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: tags
  }
}

module deployIdentity 'modules/identity.bicep' = {
  name: 'deploy-identity'
  scope: rg
  params: {
    name: 'id-deploy-${resourceToken}'
    location: location
    tags: tags
  }
}

module network 'modules/network.bicep' = if (privateNetworking) {
  name: 'network'
  scope: rg
  params: {
    name: 'vnet-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    appInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    tablePrefix: tablePrefix
    privateNetworking: privateNetworking
  }
}

module packageStorage 'modules/package-storage.bicep' = {
  name: 'package-storage'
  scope: rg
  params: {
    name: 'stpkg${take(resourceToken, 19)}'
    location: location
    tags: tags
    privateNetworking: privateNetworking
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    privateNetworking: privateNetworking
  }
}

// Private endpoints (private networking only): the host's blob and queue, the service's tables, the
// deployment package's blob, and Key Vault, each registered in its private DNS zone.
module storageBlobEndpoint 'modules/private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-storage-blob'
  scope: rg
  params: {
    name: 'pe-${storage.outputs.name}-blob'
    location: location
    tags: tags
    subnetId: network.outputs.endpointSubnetId
    targetId: storage.outputs.id
    groupId: 'blob'
    privateDnsZoneId: network.outputs.blobZoneId
  }
}

module storageQueueEndpoint 'modules/private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-storage-queue'
  scope: rg
  params: {
    name: 'pe-${storage.outputs.name}-queue'
    location: location
    tags: tags
    subnetId: network.outputs.endpointSubnetId
    targetId: storage.outputs.id
    groupId: 'queue'
    privateDnsZoneId: network.outputs.queueZoneId
  }
}

module storageTableEndpoint 'modules/private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-storage-table'
  scope: rg
  params: {
    name: 'pe-${storage.outputs.name}-table'
    location: location
    tags: tags
    subnetId: network.outputs.endpointSubnetId
    targetId: storage.outputs.id
    groupId: 'table'
    privateDnsZoneId: network.outputs.tableZoneId
  }
}

module packageBlobEndpoint 'modules/private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-package-blob'
  scope: rg
  params: {
    name: 'pe-${packageStorage.outputs.name}-blob'
    location: location
    tags: tags
    subnetId: network.outputs.endpointSubnetId
    targetId: packageStorage.outputs.id
    groupId: 'blob'
    privateDnsZoneId: network.outputs.blobZoneId
  }
}

module vaultEndpoint 'modules/private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-vault'
  scope: rg
  params: {
    name: 'pe-${keyVault.outputs.name}'
    location: location
    tags: tags
    subnetId: network.outputs.endpointSubnetId
    targetId: keyVault.outputs.id
    groupId: 'vault'
    privateDnsZoneId: network.outputs.vaultZoneId
  }
}

module roles 'modules/role-assignments.bicep' = {
  name: 'role-assignments'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    dataKeyName: keyVault.outputs.dataKeyName
    appInsightsName: monitoring.outputs.appInsightsName
    identityPrincipalId: identity.outputs.principalId
    deployIdentityPrincipalId: deployIdentity.outputs.principalId
    packageStorageAccountName: packageStorage.outputs.name
    packageContainerName: packageStorage.outputs.containerName
    adminPrincipalId: principalId
    adminPrincipalType: principalType
  }
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: 'func-${resourceToken}'
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    serviceName: 'api'
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    deployIdentityId: deployIdentity.outputs.id
    storageAccountName: storage.outputs.name
    packageContainerUrl: packageStorage.outputs.containerUrl
    virtualNetworkSubnetId: privateNetworking ? network.outputs.appSubnetId : ''
    appInsightsName: monitoring.outputs.appInsightsName
    keyVaultUrl: keyVault.outputs.uri
    dataKeyName: keyVault.outputs.dataKeyName
    customPublicUrl: customPublicUrl
    redirectAllowlist: redirectAllowlist
    tablePrefix: tablePrefix
    linkTtlSeconds: linkTtlSeconds
    linkMaxTtlSeconds: linkMaxTtlSeconds
    flowTtlSeconds: flowTtlSeconds
    accessCheck: accessCheck
    tokenStorageMode: tokenStorageMode
    webhookUrls: webhookUrls
    reauthRedirectUrl: reauthRedirectUrl
    keepaliveDays: keepaliveDays
    keepaliveMaxPerRun: keepaliveMaxPerRun
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
  // The app should not start before its identity can reach storage, Key Vault and App Insights, nor
  // (private networking) before the private endpoints resolve.
  dependsOn: [
    roles
    storageBlobEndpoint
    storageQueueEndpoint
    storageTableEndpoint
    packageBlobEndpoint
    vaultEndpoint
  ]
}

// Saved by azd into .azure/<env>/.env and handed to the hooks. Names and URLs only: no key, no secret.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
// The admin the roles were granted to: azd fills the parameter from its own login but does not save it,
// and the postprovision hook names this principal when Key Vault answers 403.
output AZURE_PRINCIPAL_ID string = principalId
output AZURE_SUBSCRIPTION_ID string = subscription().subscriptionId
output AZURE_RESOURCE_MANAGER_ENDPOINT string = environment().resourceManager
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = functionApp.outputs.publicUrl
output MC_PUBLIC_URL string = functionApp.outputs.publicUrl
output MC_OAUTH_REDIRECT_URI string = '${functionApp.outputs.publicUrl}/oauth'
output MC_TABLES_ENDPOINT string = storage.outputs.tableEndpoint
output MC_KEY_VAULT_URL string = keyVault.outputs.uri
output MC_TABLE_PREFIX string = tablePrefix
// 'true' or 'false': the postprovision hook then writes Key Vault secrets through the control plane.
output MC_PRIVATE_NETWORKING string = string(privateNetworking)
output MC_OUTBOUND_ADDRESS string = privateNetworking ? network.outputs.outboundAddress : ''
